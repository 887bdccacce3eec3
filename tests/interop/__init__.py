"""Interop tests: Nexus in front of real llama.cpp servers (llama-cpp-python + SmolLM2-135M)."""

"""Fleet intelligence (F19) and model lifecycle (F20): see docs/fleet.md.

``nexus.fleet.service.Fleet`` is what the app builds; ``nexus.fleet.config.FleetConfig`` is
the ``[fleet]`` section; ``nexus.fleet.demand.DemandStore`` is what the state store
implements to keep demand history across restarts. This package imports nothing itself, so
``nexus.config`` can import ``FleetConfig`` without pulling in the rest.
"""

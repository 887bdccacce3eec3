"""Fleet intelligence (F19) and model lifecycle (F20): see docs/fleet.md.

``nexus.fleet.service.Fleet`` is what the app builds; its settings are ``[fleet]``
(``nexus.config.FleetConfig``); ``nexus.fleet.demand.DemandStore`` is what the state store
implements to keep demand history across restarts.
"""

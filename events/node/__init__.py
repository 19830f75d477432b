"""The Node and its parts: broker, hub, presence, streams, the store writer's users, background services."""

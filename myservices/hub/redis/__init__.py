"""The Redis engine of the hub (``[hub] engine = "redis"``): many processes and hosts share one hub."""

from myservices.hub.redis.engine import RedisEngine

__all__ = ["RedisEngine"]

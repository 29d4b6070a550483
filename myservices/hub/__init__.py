"""The chat/pub-sub hub shared by every front end: the hub, its contracts and the memory engine."""

from myservices.hub.config import HubConfig
from myservices.hub.core import Hub, HubService
from myservices.hub.engine import MemoryEngine
from myservices.hub.events import Direct, Event, Kick, Message, NickChange, Presence, Stats, UnencodableEvent
from myservices.hub.history import HistoryRejected, HistoryStore
from myservices.hub.interfaces import EngineNode, HubEngine, Joined, RoomInfo, Subscriber
from myservices.hub.rooms import Session
from myservices.hub.server_side import Page

__all__ = [
    "Direct", "EngineNode", "Event", "HistoryRejected", "HistoryStore", "Hub", "HubConfig", "HubEngine", "HubService",
    "Kick",
    "Joined", "MemoryEngine", "Message", "NickChange", "Page", "Presence", "RoomInfo", "Session", "Stats",
    "Subscriber",
    "UnencodableEvent",
]

"""The chat/pub-sub hub shared by every front end."""

from myservices.hub.backplane import Backplane, InProcessBackplane
from myservices.hub.config import HubConfig
from myservices.hub.core import Hub, HubService
from myservices.hub.rooms import Room, Session, Subscriber
from myservices.hub.events import Event, Message, NickChange, Presence, UnencodableEvent
from myservices.hub.history import HistoryRejected, HistoryStore

__all__ = [
    "Backplane", "Event", "HistoryRejected", "HistoryStore", "Hub", "HubConfig", "HubService", "InProcessBackplane",
    "Message", "NickChange", "Presence", "Room", "Session", "Subscriber", "UnencodableEvent",
]

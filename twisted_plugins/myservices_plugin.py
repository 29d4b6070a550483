from twisted.application.service import ServiceMaker

myservices = ServiceMaker("myservices", "myservices.tap", "Multi-protocol server daemon (echo, chat, HTTP, WebSocket, UDP, framed JSON, PB)", "myservices")

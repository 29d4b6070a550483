"""The Perspective Broker service: Python-to-Python RPC with twisted.cred login.

L{server} holds the configuration, the broker (limits and flow control) and
the factory; L{login} the cred checker, realm and root object; L{avatar} the
logged-in perspective and the room objects it hands out; L{errors} what a
client sees when a call fails.
"""

"""The operator page's data: live statistics for admins (rooms, rates, connections, health, recent errors)."""

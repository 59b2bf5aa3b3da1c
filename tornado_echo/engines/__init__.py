"""What carries frames after the upgrade: the fast engine (an asyncio Protocol), the stock
engine (Tornado's own), and their timers and rate limits."""

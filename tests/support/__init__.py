"""What the tests share: the app in process (asgi), a real server process (process), a WAV reader (wav)."""

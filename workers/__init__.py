"""Process entry points: worker and beat start-up checks, heartbeats and the session-gated scheduler."""

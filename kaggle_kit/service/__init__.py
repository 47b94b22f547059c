"""OpenAI-compatible service for the TTS strategies (FastAPI)."""

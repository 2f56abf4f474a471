"""An HTTP server for one model (FastAPI + uvicorn): ``app.build_app`` and ``app.serve``."""

"""Apps that tests serve in a separate uvicorn process."""

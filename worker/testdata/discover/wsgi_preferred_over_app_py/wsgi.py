from app import app  # noqa

"""hotelbot: train, ship and serve the intent classifier of a Spanish-speaking hotel chatbot."""

__version__ = "0.1.0"

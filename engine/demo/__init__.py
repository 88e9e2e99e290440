"""The synthetic addition task, `kojudge demo` and the small judge shipped as package data."""

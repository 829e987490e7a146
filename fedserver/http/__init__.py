"""HTTP layer: twisted.web resources that parse, call handlers and render JSON or Matrix errors."""

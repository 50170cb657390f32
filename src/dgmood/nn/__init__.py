"""Plain network pieces shared by models."""

"""Training scripts that log through the SDK exactly as a user's own script would."""

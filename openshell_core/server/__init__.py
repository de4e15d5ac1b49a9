"""The reference gateway that runs inside the gateway image."""

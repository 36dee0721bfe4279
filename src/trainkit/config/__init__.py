"""What a valid config is: its keys, types and ranges, and the rules that relate several keys."""

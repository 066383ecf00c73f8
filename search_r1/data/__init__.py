"""Dataset schemas, readers and builders shared by every stage."""

"""Loss functions (placeholder until the training-stack work lands)."""

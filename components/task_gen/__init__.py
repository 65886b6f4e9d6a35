"""TaskGen: transformed interactions -> task-shaped support/query records."""

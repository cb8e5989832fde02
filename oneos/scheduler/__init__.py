"""The scheduler: decides which runtime runs each agent."""

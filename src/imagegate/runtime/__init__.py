"""The processes around the store: workers (they own the models and the GPU), the supervisor that
keeps them alive, and housekeeping. They talk to the API only through the job store."""

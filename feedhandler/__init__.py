"""The feedhandler appliance: command line, pipeline wiring, config."""

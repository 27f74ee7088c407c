"""KFP pipeline definitions, their compile entry point and compiled YAML."""

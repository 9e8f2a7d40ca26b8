"""An experiment from YAML: config loading, validation and building, and the tinybig mapping."""

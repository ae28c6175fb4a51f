"""quantir.tools: the `quantir` command line and IR debugging tools."""

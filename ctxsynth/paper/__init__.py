"""The paper's findings as DVC experiment groups, and the report that collects and compares them."""

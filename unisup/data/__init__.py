"""Catalog and judgment loaders, the query split, and public dataset layouts."""

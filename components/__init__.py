"""Thin KFP v2 components, one per pipeline stage; all logic lives in the unisup package."""

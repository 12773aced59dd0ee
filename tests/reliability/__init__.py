"""Fault-injection tests: nothing lost, nothing counted twice."""

"""Third-party packages vendored into otherlib (installed here by tests/vendoring/CMakeLists.txt)."""

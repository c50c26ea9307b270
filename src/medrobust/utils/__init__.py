"""Small helpers shared by every subpackage (seeding, devices, progress, validation)."""

"""What people look at: PNG writing, image grids, labelled sheets and charts (Pillow, no NumPy)."""

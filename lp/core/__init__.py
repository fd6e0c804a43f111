"""What every layer uses: one-line errors, safe writes, weight files checked without
loading them, and typed-config checks."""

"""The Kandinsky Video 1.1 networks."""

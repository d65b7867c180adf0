"""Great Expectations data gates: a stage's outputs must pass before the next stage reads them."""

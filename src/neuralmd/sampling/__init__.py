"""Enhanced sampling: collective variables, biases (OPES, well-tempered metadynamics,
restraints) and free-energy estimates."""

"""Learning from experimental data: refine a potential until its simulations reproduce measured
averages (partial RDFs, density, any torch observable), by differentiable trajectory
reweighting (:mod:`.difftre`), with QM data fused into the loss. :mod:`.targets` reads and
evaluates the measurements; :mod:`.runs` starts and resumes ``neuralmd refine``."""

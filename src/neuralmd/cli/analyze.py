"""``neuralmd analyze``: observables of a condensed-phase run (RDFs, density, diffusion)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from .common import app, comma_list, console


@app.command()
def analyze(
    run: Path = typer.Argument(..., help="md run directory (traj_XXX.pdb + traj_XXX.h5md, periodic)"),
    rdf: Optional[str] = typer.Option(None, help="partial RDFs, e.g. O-O,O-H,H-H"),
    density: bool = typer.Option(False, "--density", help="mass density (g/cm³) with its block error"),
    msd: Optional[str] = typer.Option(None, help="elements whose mean-squared displacement and self-diffusion to "
                                                "compute, e.g. O"),
    viscosity_mpa_s: Optional[float] = typer.Option(None, help="shear viscosity for the Yeh-Hummer finite-size "
                                                               "correction of D (water at 300 K: 0.85 mPa·s)"),
    replica: int = typer.Option(0, help="which replica's trajectory"),
    skip_ps: float = typer.Option(0.0, help="discard the first ps (equilibration)"),
    r_max: float = typer.Option(6.0, help="RDF range in Å (at most half the box)"),
    bins: int = typer.Option(120, help="RDF bins"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="folder for analysis.json and plots "
                                                                       "(default: RUN)"),
) -> None:
    """Partial RDFs (MDAnalysis InterRDF, errors over 5 blocks of frames), density (block error
    with the block length from the data) and self-diffusion (MDAnalysis EinsteinMSD, slope over
    the middle 60 % of lags, Yeh-Hummer corrected with --viscosity-mpa-s); writes analysis.json,
    rdf.png and msd_<element>.png."""
    import numpy as np

    from ..analysis import observables as obs
    from ..analysis.plots import plot_msd, plot_rdfs
    from ..io_utils import atomic_write_json
    from ..rundir import check_writable, md_settings, replica_temperature

    if not (rdf or density or msd):
        raise InputError("analyze: ask for something: --rdf O-O,..., --density, --msd O")
    if bins < 2 or replica < 0 or not skip_ps >= 0 or (viscosity_mpa_s is not None and not viscosity_mpa_s > 0):
        raise InputError(f"bins {bins}, replica {replica}, skip-ps {skip_ps}, viscosity {viscosity_mpa_s}: expected "
                         f"bins >= 2, replica >= 0, skip-ps >= 0, viscosity > 0")
    out = check_writable(output or run)
    u, start = obs.universe(run, replica, skip_ps)
    result: dict = {"run": str(run), "replica": replica, "frames": len(u.trajectory) - start, "skip_ps": skip_ps}
    if rdf:
        pairs = comma_list(rdf, "rdf")
        result["rdf"] = {pair: obs.rdf(u, pair, start, r_max, bins) for pair in pairs}
    if density:
        result["density_g_cm3"] = obs.density(u, start)
    diffusion = {}
    if msd:
        temperature = replica_temperature(md_settings(run), replica)
        box = float(np.mean([ts.dimensions[:3].mean() for ts in u.trajectory[start:]]))
        for element in comma_list(msd, "msd"):
            lags, values = obs.msd(u, element, start)
            diffusion[element] = (lags, values, obs.diffusion(lags, values, temperature, box, viscosity_mpa_s))
        result["diffusion_1e-9_m2_s"] = {e: d[2] for e, d in diffusion.items()}
    out.mkdir(parents=True, exist_ok=True)
    if rdf:
        plot_rdfs(result["rdf"], out / "rdf.png", title=f"{run.name}: RDFs")
    for element, (lags, values, fit) in diffusion.items():
        plot_msd(lags, values, fit["fit_ps"], fit["raw"], out / f"msd_{element}.png", element)
    atomic_write_json(result, out / "analysis.json")
    for pair, data in result.get("rdf", {}).items():
        console.print(f"g_{pair}: first peak {data['first_peak']['height']:.3f} at {data['first_peak']['position_A']:.3f} Å")
    if density:
        d = result["density_g_cm3"]
        console.print(f"density {d['mean']:.4f} ± {d['err']:.4f} g/cm³")
    for element, fit in result.get("diffusion_1e-9_m2_s", {}).items():
        console.print(f"D({element}) = {fit['raw']:.3f}e-9 m²/s" + (f", {fit['corrected']:.3f}e-9 m²/s corrected for "
                                                                   f"the box (Yeh-Hummer)" if "corrected" in fit else ""))
    console.print(f"-> {out / 'analysis.json'}")

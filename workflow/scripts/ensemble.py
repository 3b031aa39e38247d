from cotransfer import io, stages
from cotransfer.config import Study

if __name__ == "__main__":  # vLLM may spawn workers that re-import this file
    stages.start_job(snakemake)
    study = Study.from_dict(snakemake.config)
    name = snakemake.wildcards.ensemble
    manifests = {m: snakemake.input[m] for m in study.ensembles[name].members}
    stages.ensemble(study, snakemake.wildcards.dataset, name, snakemake.input.itemsfile, manifests,
                    snakemake.output.cots, snakemake.output.steps, io.provenance_from_snakemake(snakemake))
    stages.end_job()  # outputs are written: skip vLLM's slow in-process teardown

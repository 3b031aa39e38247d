from cotransfer import io, stages
from cotransfer.config import Study

if __name__ == "__main__":  # the llm method starts vLLM
    stages.setup_logging(snakemake.log[0])
    inp = snakemake.input
    stages.strip(Study.from_dict(snakemake.config), snakemake.wildcards.dataset, inp.cots, inp.sentences,
                 inp.get("generations"), inp.itemsfile, snakemake.output[0],
                 io.provenance_from_snakemake(snakemake), manifest=inp.get("model"))

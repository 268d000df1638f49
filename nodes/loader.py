"""Load Perfusion Concept: a concept file from models/perfusion."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from .concepts import ConceptType, concept_names, concept_path, describe, read_concept


class LoadPerfusionConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PerfusionLoadConcept",
            display_name="Load Perfusion Concept",
            category="perfusion",
            description="Loads a Perfusion concept (a .safetensors file of 36 KB for SD1.5, 195 KB for SDXL) from "
                        "models/perfusion.",
            inputs=[
                io.Combo.Input("concept_name", options=concept_names(),
                               tooltip="A concept file in models/perfusion (or a folder added in "
                                       "extra_model_paths.yaml under 'perfusion'). Press R to refresh the list."),
            ],
            outputs=[ConceptType.Output(display_name="concept", tooltip="The concept, for Apply Perfusion.")],
        )

    @classmethod
    def fingerprint_inputs(cls, concept_name: str) -> float:
        try:
            return concept_path(concept_name).stat().st_mtime
        except Exception:  # a missing file fails in execute, with the message
            return float("nan")

    @classmethod
    def execute(cls, concept_name: str) -> io.NodeOutput:
        concept = read_concept(concept_name)
        return io.NodeOutput(concept, ui={"perfusion_concept": [describe(concept, concept_name)]})

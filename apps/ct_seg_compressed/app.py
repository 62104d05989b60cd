"""CT segmentation with a compressed MONAI bundle: DICOM CT series in, DICOM SEG out (+ optional NIfTI).

    python app.py -i <dicom folder> -o <output folder> -m <compressed bundle folder> \
        [--backend auto|torchscript|onnxruntime|openvino] [--precision auto|fp32|int8] [--nifti] \
        [--operator compressed|stock] [--bundle-postprocessing]

(also ``monai-prune deploy run ct_seg_compressed -i ... -o ... -m ...``). The graph is the stock MONAI Deploy chain
DICOMDataLoader -> DICOMSeriesSelector (CT) -> DICOMSeriesToVolume -> inference -> DICOMSegmentationWriter, with
monai-prune's CompressedBundleInferenceOperator as the inference step: the bundle's own preprocessing, sliding-window
inferer and postprocessing around the compressed model on ONNX Runtime / OpenVINO / TorchScript. The input and the
model's sha256 are checked before the graph starts; outputs appear only when the whole run succeeded, with
run.json (model, backend, seconds per stage).
"""

import logging
import sys
from pathlib import Path

from monai.deploy.core import AppContext, Application, Image, IOType
from monai.deploy.operators import BundleConfigNames, IOMapping
from monai.deploy.operators.dicom_seg_writer_operator import SegmentDescription
from pydicom.sr.codedict import codes

from monai_prune.deploy.models import bundle_metadata
from monai_prune.deploy.operators import (CompressedBundleApp, CompressedBundleInferenceOperator,
                                         NiftiSegmentationWriterOperator, SegmentationWriterOperator,
                                         StageTimedBundleInferenceOperator, timed)
from monai_prune.deploy.runner import run_app

SELECTION_RULES = {"selections": [{"name": "CT series", "conditions": {"Modality": "(?i)CT"}}]}


class CTSegCompressedApp(CompressedBundleApp):
    """DICOM CT -> compressed bundle -> DICOM SEG, one segment per foreground channel of the bundle's output."""

    def compose(self):
        context: AppContext = Application.init_app_context(self.argv)
        output = Path(context.output_path)
        choice = self.model_choice
        pred = bundle_metadata(choice.bundle or choice.path)["network_data_format"]["outputs"]["pred"]
        labels = [v for k, v in sorted(pred.get("channel_def", {}).items(), key=lambda kv: int(kv[0])) if k != "0"]
        algorithm = f"{choice.name} ({choice.backend} {choice.precision})"

        selector, volume = self.dicom_input(context, SELECTION_RULES)
        inference = self._inference(context)
        seg_writer = timed(SegmentationWriterOperator)(
            self, output_folder=output, name="dicom_seg_writer", omit_empty_frames="auto",
            model_info=self.model_info(),
            series_description=f"AI segmentation ({choice.name})",
            segment_descriptions=[SegmentDescription(segment_label=label, segmented_property_category=codes.SCT.Organ,
                                                     segmented_property_type=codes.SCT.Organ,
                                                     algorithm_name=algorithm[:64],
                                                     algorithm_version=choice.version or "0")
                                  for label in labels])
        for op in (inference, seg_writer):
            op.stage_timer = self.stage_timer
        self.add_flow(volume, inference, {("image", "image")})
        self.add_flow(inference, seg_writer, {("pred", "seg_image")})
        self.add_flow(selector, seg_writer, {("study_selected_series_list", "study_selected_series_list")})
        if self.run_options.nifti:
            nifti = NiftiSegmentationWriterOperator(self, output_folder=output, name="nifti_writer")
            self.add_flow(inference, nifti, {("pred", "seg_image")})

    def _inference(self, context):
        """monai-prune's operator (our backends), or with --operator stock the SDK's own operator on model.ts."""
        io = dict(input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
                  output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
                  bundle_config_names=BundleConfigNames(config_names=["inference"]), app_context=context)
        choice = self.model_choice
        if self.run_options.operator == "stock":
            model_ts = choice.path if choice.bundle is None else str(Path(choice.bundle) / "models" / "model.ts")
            return timed(StageTimedBundleInferenceOperator)(self, bundle_path=model_ts, stage_timer=self.stage_timer,
                                                            name="stock_bundle_inference", **io)
        return timed(CompressedBundleInferenceOperator)(
            self, model_choice=choice, stage_timer=self.stage_timer, num_threads=self.run_options.num_threads,
            fast_postprocessing=not self.run_options.bundle_postprocessing, name="compressed_inference", **io)


def main(argv=None) -> int:
    """One study: ``argv`` as the command line (default ``sys.argv``); ``monai-prune serve`` calls this per study."""
    return run_app(CTSegCompressedApp, expected=["*.dcm"], modality="CT", argv=argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(main())

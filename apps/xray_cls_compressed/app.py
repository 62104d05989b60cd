"""Chest X-ray classification with a compressed MONAI bundle: a DICOM radiograph in, class + probabilities out as
result.json and a DICOM SR (Basic Text SR, the stock DICOMTextSRWriterOperator).

    python app.py -i <dicom folder> -o <output folder> -m <compressed bundle folder> \
        [--backend auto|torchscript|onnxruntime|openvino] [--precision auto|fp32|int8]

(also ``monai-prune deploy run xray_cls_compressed -i ... -o ... -m ...``). Graph: DICOMDataLoader ->
DICOMSeriesSelector (DX/CR) -> DICOMSeriesToVolume -> monai-prune's CompressedBundleInferenceOperator (the bundle's
own preprocessing and postprocessing; the postprocessing ends with the argmax label) -> ClassificationResultOperator
(result.json with the model record) -> DICOMTextSRWriter. Input and model checksums are checked before the graph
starts; outputs appear only when the whole run succeeded, with run.json (model, backend, seconds per stage).
"""

import logging
import sys
from pathlib import Path

from monai.deploy.core import AppContext, Application, Image, IOType
from monai.deploy.operators import (BundleConfigNames, DICOMTextSRWriterOperator, EquipmentInfo, IOMapping)

from monai_prune.deploy.operators import (ClassificationResultOperator, CompressedBundleApp,
                                         CompressedBundleInferenceOperator, timed)
from monai_prune.deploy.runner import run_app

MODALITIES = ("DX", "CR")
SELECTION_RULES = {"selections": [{"name": "chest radiograph", "conditions": {"Modality": "(?i)(DX|CR)"}}]}


class XrayClsCompressedApp(CompressedBundleApp):
    """DICOM DX/CR -> compressed classification bundle -> result.json + DICOM SR."""

    def compose(self):
        context: AppContext = Application.init_app_context(self.argv)
        output = Path(context.output_path)
        selector, volume = self.dicom_input(context, SELECTION_RULES)
        inference = timed(CompressedBundleInferenceOperator)(
            self, app_context=context, model_choice=self.model_choice, num_threads=self.run_options.num_threads,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", dict, IOType.IN_MEMORY)],
            bundle_config_names=BundleConfigNames(config_names=["inference"]), name="compressed_inference")
        result = timed(ClassificationResultOperator)(self, output_folder=output, model_op=inference,
                                                     name="classification_result")
        sr_writer = timed(DICOMTextSRWriterOperator)(
            self, output_folder=output, model_info=self.model_info(), copy_tags=True, name="dicom_sr_writer",
            equipment_info=EquipmentInfo(manufacturer="monai-prune", manufacturer_model=self.model_choice.name[:64],
                                         software_version_number=self.model_choice.version))
        for op in (inference, result, sr_writer):
            op.stage_timer = self.stage_timer
        self.add_flow(volume, inference, {("image", "image")})
        self.add_flow(inference, result, {("pred", "result")})
        self.add_flow(result, sr_writer, {("text", "text")})
        self.add_flow(selector, sr_writer, {("study_selected_series_list", "study_selected_series_list")})


def main(argv=None) -> int:
    """One study: ``argv`` as the command line (default ``sys.argv``); ``monai-prune serve`` calls this per study."""
    return run_app(XrayClsCompressedApp, expected=["result.json", "*.dcm"], modality=list(MODALITIES), min_slices=1,
                   argv=argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(main())

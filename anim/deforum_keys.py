"""What sdfleet knows about the keys of a Deforum settings file (data for `anim.deforum`).

Facts from Deforum's own code (deforum-art/sd-webui-deforum, ``scripts/deforum_helpers``):
``args.py`` gives the defaults a key takes when a settings file leaves it out, ``settings.py``
which keys a file holds, ``deprecation_utils.py`` the old names, ``render.py`` which keys are
read in which mode. Every key falls in one group:

- mapped (`MAPPED`): converted with Deforum's meaning by `anim.deforum`;
- gated (`GATES`): a switch whose active value changes the picture in a way sdfleet cannot
  render; refused by name with the reason unless the differences are accepted;
- quiet (`QUIET`, and ``cn_<n>_*`` except ``cn_<n>_enabled``): UI state, output housekeeping,
  or settings read only when a gated switch is on (3D depth settings, masks, hybrid video...);
- anything else is unknown (another Deforum version?) and refused like a gate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# Defaults from Deforum's args.py (webui extension) for every key sdfleet reads.
DEFAULTS: dict[str, Any] = {
    "W": 512,
    "H": 512,
    "seed": -1,
    "sampler": "Euler a",
    "steps": 25,
    "seed_behavior": "iter",
    "seed_iter_N": 1,
    "use_init": False,
    "strength": 0.8,
    "init_image": None,
    "animation_mode": "2D",
    "max_frames": 120,
    "border": "replicate",
    "angle": "0: (0)",
    "zoom": "0: (1.0025+0.002*sin(1.25*3.14*t/30))",
    "translation_x": "0: (0)",
    "translation_y": "0: (0)",
    "transform_center_x": "0: (0.5)",
    "transform_center_y": "0: (0.5)",
    "enable_perspective_flip": False,
    "perspective_flip_theta": "0: (0)",
    "perspective_flip_phi": "0: (0)",
    "perspective_flip_gamma": "0: (0)",
    "perspective_flip_fv": "0: (53)",
    "noise_schedule": "0: (0.065)",
    "strength_schedule": "0: (0.65)",
    "contrast_schedule": "0: (1.0)",
    "cfg_scale_schedule": "0: (7)",
    "enable_steps_scheduling": False,
    "steps_schedule": "0: (25)",
    "seed_schedule": '0:(s), 1:(-1), "max_f-2":(-1), "max_f-1":(s)',
    "amount_schedule": "0: (0.1)",
    "kernel_schedule": "0: (5)",
    "sigma_schedule": "0: (1)",
    "threshold_schedule": "0: (0)",
    "color_coherence": "LAB",
    "diffusion_cadence": 2,
    "noise_type": "perlin",
    "perlin_w": 8,
    "perlin_h": 8,
    "perlin_octaves": 4,
    "perlin_persistence": 0.5,
    "enable_noise_multiplier_scheduling": True,
    "noise_multiplier_schedule": "0: (1.05)",
    "subseed_strength_schedule": "0: (0)",
    "enable_sampler_scheduling": False,
    "sampler_schedule": '0: ("Euler a")',
    "ddim_eta_schedule": "0: (0)",
    "ancestral_eta_schedule": "0: (1)",
    "fps": 15,
    "make_gif": False,
    "add_soundtrack": "None",
    "soundtrack_path": "",
    "parseq_manifest": "",
    "parseq_use_deltas": True,
}

# Old names (deprecation_utils.py) -> today's; the values they map are handled by the readers.
RENAMED = {
    "flip_2d_perspective": "enable_perspective_flip",
    "skip_video_for_run_all": "skip_video_creation",
    "animation_prompts": "prompts",
}

# Schedules with the same name and meaning in an sdfleet animation job.
SCHEDULES = (
    "angle",
    "zoom",
    "translation_x",
    "translation_y",
    "transform_center_x",
    "transform_center_y",
    "perspective_flip_theta",
    "perspective_flip_phi",
    "perspective_flip_gamma",
    "perspective_flip_fv",
    "noise_schedule",
    "strength_schedule",
    "contrast_schedule",
    "cfg_scale_schedule",
    "amount_schedule",
    "kernel_schedule",
    "sigma_schedule",
    "threshold_schedule",
    "seed_schedule",
)
# Plain values with the same name and meaning.
SAME = (
    "max_frames",
    "border",
    "enable_perspective_flip",
    "seed_behavior",
    "seed_iter_N",
    "diffusion_cadence",
    "noise_type",
    "perlin_octaves",
    "perlin_persistence",
    "fps",
)
MAPPED = frozenset(
    {
        *SCHEDULES,
        *SAME,
        *("W", "H", "seed", "sampler", "steps", "enable_steps_scheduling", "steps_schedule"),
        *("use_init", "strength", "strength_0_no_init", "init_image", "perlin_w", "perlin_h"),
        *("prompts", "positive_prompts", "negative_prompts"),
        *("animation_prompts_positive", "animation_prompts_negative"),
        *("animation_mode", "color_coherence", "make_gif", "add_soundtrack", "soundtrack_path"),
        *("parseq_manifest", "parseq_use_deltas", "sd_model_name"),
        *("enable_sampler_scheduling", "sampler_schedule"),
        *("hybrid_composite", "hybrid_motion", "hybrid_comp_alpha_schedule"),
        *("hybrid_flow_method", "video_init_path", "extract_nth_frame", "extract_from_frame"),
    }
)

# A1111 sampler names (and the old notebook's) -> sdfleet schedulers (batch/schedulers.py).
SAMPLERS = {
    "euler a": "euler_a",
    "euler_ancestral": "euler_a",
    "euler": "euler",
    "ddim": "ddim",
    "plms": "pndm",
    "heun": "heun",
    "dpm++ 2m": "dpmpp_2m",
    "dpmpp_2m": "dpmpp_2m",
    "dpm++ 2m karras": "dpmpp_2m_karras",
    "dpm++ 2m sde": "dpmpp_sde_2m",
    "unipc": "unipc",
    "lcm": "lcm",
}
# Samplers with no exact equivalent -> the nearest one rendered once the difference is accepted.
NEAREST_SAMPLERS = {
    "dpm++ 2m sde karras": "dpmpp_sde_2m",
    "dpm++ sde karras": "dpmpp_sde_2m",
    "dpm++ sde": "dpmpp_sde_2m",
    "dpm++ 2m sde exponential": "dpmpp_sde_2m",
    "dpm++ 2s a": "euler_a",
    "dpm++ 2s a karras": "euler_a",
    "dpm2 a": "euler_a",
    "dpm2 a karras": "euler_a",
    "dpm adaptive": "dpmpp_2m",
    "dpm fast": "dpmpp_2m",
    "dpm2": "heun",
    "dpm2 karras": "heun",
    "lms": "euler",
    "lms karras": "euler",
    "klms": "euler",
    "restart": "euler",
}

Settings = Mapping[str, Any]


def _on(key: str) -> Callable[[Settings], bool]:
    return lambda s: s.get(key) is True


def _not(key: str, *off: Any) -> Callable[[Settings], bool]:
    return lambda s: key in s and s[key] not in off


_THREE_D = (
    "translation_z, rotation_3d_x/y/z, fov/near/far and aspect ratio schedules, the depth model "
    "(depth_algorithm, midas_weight, use_depth_warping) and padding/sampling mode are not used"
)
# key -> (is it on?, why sdfleet cannot render it, what is rendered instead once accepted).
# Schedules (noise multiplier, eta, subseed strength) are judged by `anim.deforum`.
GATES: dict[str, tuple[Callable[[Settings], bool], str]] = {
    "restore_faces": (_on("restore_faces"), "face restoration (GFPGAN/CodeFormer) is not run"),
    "tiling": (_on("tiling"), "seamless tiling is not available"),
    "seed_resize_from_w": (_not("seed_resize_from_w", 0, None), "seed resize is not available"),
    "seed_resize_from_h": (_not("seed_resize_from_h", 0, None), "seed resize is not available"),
    "use_mask": (_on("use_mask"), "inpainting masks are not available; the whole frame renders"),
    "use_alpha_as_mask": (
        lambda s: s.get("use_alpha_as_mask") is True and s.get("use_init") is True,
        "masks from the init image's alpha are not available",
    ),
    "motion_preview_mode": (_on("motion_preview_mode"), "motion preview is not available"),
    "enable_checkpoint_scheduling": (
        _on("enable_checkpoint_scheduling"),
        "the model cannot change during a clip; one model renders every frame",
    ),
    "enable_clipskip_scheduling": (_on("enable_clipskip_scheduling"), "CLIP skip is not applied"),
    "use_noise_mask": (_on("use_noise_mask"), "noise masks are not available"),
    "color_force_grayscale": (_on("color_force_grayscale"), "forced greyscale is not available"),
    "legacy_colormatch": (
        _on("legacy_colormatch"),
        "colour matching runs in Deforum's default place (after noise is not offered)",
    ),
    "optical_flow_cadence": (
        _not("optical_flow_cadence", "None", False, None),
        "optical-flow cadence is not available; tweens blend warped frames",
    ),
    "optical_flow_redo_generation": (
        _not("optical_flow_redo_generation", "None", False, None),
        "optical-flow redo is not available",
    ),
    "diffusion_redo": (_not("diffusion_redo", "0", 0, None), "diffusion redo is not available"),
    "use_mask_video": (_on("use_mask_video"), "mask videos are not available"),
    "use_looper": (_on("use_looper"), "guided images (looper) are not available"),
    "resume_from_timestring": (
        _on("resume_from_timestring"),
        "a Deforum run cannot be continued; sdfleet renders from frame 0 (and resumes its own)",
    ),
    "r_upscale_video": (_on("r_upscale_video"), "Real-ESRGAN upscaling is not available"),
    "frame_interpolation_engine": (
        _not("frame_interpolation_engine", "None", None),
        "RIFE/FILM are not available; the frames are interpolated by optical flow instead "
        "(video.interpolate = frame_interpolation_x_amount, at the same duration, no slow-mo)",
    ),
}

# switch -> (its schedule, the value that changes nothing, why another value is refused)
SCHEDULE_GATES: dict[str, tuple[str, float, str]] = {
    "enable_noise_multiplier_scheduling": (
        "noise_multiplier_schedule",
        1.0,
        "A1111's img2img noise multiplier is not applied (1.0 is rendered)",
    ),
    "enable_subseed_scheduling": (
        "subseed_strength_schedule",
        0.0,
        "variation seeds (subseeds) are not rendered",
    ),
    "enable_ddim_eta_scheduling": ("ddim_eta_schedule", 0.0, "DDIM eta is not scheduled"),
    "enable_ancestral_eta_scheduling": (
        "ancestral_eta_schedule",
        1.0,
        "ancestral eta is not scheduled",
    ),
}

QUIET = frozenset(
    {
        # UI state, metadata and output housekeeping
        *("show_info_on_ui", "batch_name", "reroll_blank_frames", "reroll_patience"),
        *("sd_model_hash", "deforum_git_commit_id", "timestring", "outdir", "image_path"),
        *("mp4_path", "skip_video_creation", "delete_imgs", "delete_input_frames"),
        *("store_frames_in_ram", "strength_0_no_init", "histogram_matching"),
        *("r_upscale_factor", "r_upscale_model", "r_upscale_keep_imgs"),
        *("frame_interpolation_x_amount", "frame_interpolation_slow_mo_enabled"),
        *("frame_interpolation_slow_mo_amount", "frame_interpolation_keep_imgs"),
        *("frame_interpolation_use_upscaled", "parseq_non_schedule_overrides"),
        # read only with a gated switch on
        *("mask_file", "invert_mask", "mask_contrast_adjust", "mask_brightness_adjust"),
        *("overlay_mask", "mask_overlay_blur", "fill", "full_res_mask", "full_res_mask_padding"),
        *("mask_schedule", "noise_mask_schedule", "checkpoint_schedule", "clipskip_schedule"),
        *("resume_timestring", "cadence_flow_factor_schedule", "redo_flow_factor_schedule"),
        *("color_coherence_image_path", "color_coherence_video_every_N_frames"),
        *("init_images", "image_strength_schedule", "blendFactorMax", "blendFactorSlope"),
        *("tweening_frames_schedule", "color_correction_factor", "subseed_schedule"),
        *("video_init_path", "extract_nth_frame", "extract_from_frame", "extract_to_frame"),
        *("overwrite_extracted_frames", "video_mask_path"),
        # judged through their schedules by anim.deforum
        *("enable_noise_multiplier_scheduling", "noise_multiplier_schedule"),
        *("enable_subseed_scheduling", "subseed_strength_schedule"),
        *("enable_ddim_eta_scheduling", "ddim_eta_schedule"),
        *("enable_ancestral_eta_scheduling", "ancestral_eta_schedule"),
        # only pix2pix checkpoints read it ("does nothing with non pix2pix checkpoints")
        "pix2pix_img_cfg_scale_schedule",
        # 3D mode only (the 3D gate lists them)
        *("translation_z", "rotation_3d_x", "rotation_3d_y", "rotation_3d_z", "fov_schedule"),
        *("aspect_ratio_schedule", "aspect_ratio_use_old_formula", "near_schedule"),
        *("far_schedule", "use_depth_warping", "depth_algorithm", "midas_weight", "use_zoe_depth"),
        *("padding_mode", "sampling_mode", "save_depth_maps"),
    }
)
HYBRID_PREFIX = "hybrid_"  # hybrid_* settings other than the two gates: read only with them
THREE_D_REASON = "3D mode needs a depth model and is not available; rendered as 2D: " + _THREE_D


def is_quiet(key: str) -> bool:
    """UI state or a setting read only behind a gate (see the module doc)."""
    if key in QUIET:
        return True
    if key.startswith("cn_") and not key.endswith("_enabled"):
        return True
    return key.startswith(HYBRID_PREFIX) and key not in GATES

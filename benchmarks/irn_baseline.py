"""BASELINE ONLY — a transcription of the released IRN functions, for parity tests and the benchmark.

This file exists to be compared against, not to be used. It follows ``jiwoon-ahn/irn`` (commit ``a2ece00``)
step by step, with its data layout and cost profile: numpy loops over directions and path points to build
the index arrays, one ``index_select`` + ``max_pool2d`` per path length, the **dense** ``hw × hw`` affinity
matrix squared ``exp_times`` times, per-image numpy post-processing. Only ``.cuda()`` calls are dropped (the
functions run on the inputs' device) and the CRF call goes through pydensecrf exactly as ``misc/imutils.py``
does.

Sources: ``misc/indexing.py`` (``PathIndex``, ``edge_to_affinity``, ``affinity_sparse2dense``,
``to_transition_matrix``, ``propagate_to_edge``), ``voc12/dataloader.py`` (``GetAffinityLabelFromIndices``),
``net/resnet50_irn.py`` + ``step/train_irn.py`` (the affinity loss), ``step/make_sem_seg_labels.py``,
``step/cam_to_ir_label.py``, ``misc/imutils.py`` (``crf_inference_label``, ``pil_rescale``) and
``step/make_cam.py``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ReleasePathIndex",
    "release_edge_to_affinity",
    "release_propagate_to_edge",
    "release_affinity_labels",
    "release_affinity_loss",
    "release_sem_seg_labels",
    "release_crf_inference_label",
    "release_ir_label",
    "release_pil_rescale_nearest",
    "release_make_cam",
]


class ReleasePathIndex:
    """``misc/indexing.py`` ``PathIndex``: numpy loops over directions and their path points."""

    def __init__(self, radius: int, default_size: tuple[int, int]) -> None:
        self.radius = radius
        self.radius_floor = int(np.ceil(radius) - 1)
        self.search_paths, self.search_dst = self.get_search_paths_dst(self.radius)
        self.path_indices, self.src_indices, self.dst_indices = self.get_path_indices(default_size)

    def get_search_paths_dst(self, max_radius: int = 5) -> tuple[list[np.ndarray], np.ndarray]:
        coord_indices_by_length: list[list] = [[] for _ in range(max_radius * 4)]
        search_dirs = []
        for x in range(1, max_radius):
            search_dirs.append((0, x))
        for y in range(1, max_radius):
            for x in range(-max_radius + 1, max_radius):
                if x * x + y * y < max_radius ** 2:
                    search_dirs.append((y, x))
        for d in search_dirs:
            length_sq = d[0] ** 2 + d[1] ** 2
            path_coords = []
            min_y, max_y = sorted((0, d[0]))
            min_x, max_x = sorted((0, d[1]))
            for y in range(min_y, max_y + 1):
                for x in range(min_x, max_x + 1):
                    dist_sq = (d[0] * x - d[1] * y) ** 2 / length_sq
                    if dist_sq < 1:
                        path_coords.append([y, x])
            path_coords.sort(key=lambda c: -abs(c[0]) - abs(c[1]))
            coord_indices_by_length[len(path_coords)].append(path_coords)
        path_list_by_length = [np.asarray(v) for v in coord_indices_by_length if v]
        path_destinations = np.concatenate([p[:, 0] for p in path_list_by_length], axis=0)
        return path_list_by_length, path_destinations

    def get_path_indices(self, size: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        full_indices = np.reshape(np.arange(0, size[0] * size[1], dtype=np.int64), (size[0], size[1]))
        cropped_height = size[0] - self.radius_floor
        cropped_width = size[1] - 2 * self.radius_floor
        path_indices = []
        for paths in self.search_paths:
            path_indices_list = []
            for p in paths:
                coord_indices_list = []
                for dy, dx in p:
                    ci = full_indices[dy:dy + cropped_height,
                                      self.radius_floor + dx:self.radius_floor + dx + cropped_width]
                    coord_indices_list.append(np.reshape(ci, [-1]))
                path_indices_list.append(coord_indices_list)
            path_indices.append(np.array(path_indices_list))
        src_indices = np.reshape(full_indices[:cropped_height, self.radius_floor:self.radius_floor + cropped_width], -1)
        dst_indices = np.concatenate([p[:, 0] for p in path_indices], axis=0)
        return path_indices, src_indices, dst_indices


def release_edge_to_affinity(edge: Tensor, paths_indices: list[np.ndarray]) -> Tensor:
    """``edge_to_affinity``: per path length, ``index_select`` the path points and max-pool over the path."""
    aff_list = []
    edge = edge.view(edge.size(0), -1)
    for ind_np in paths_indices:
        ind = torch.from_numpy(ind_np).to(edge.device)
        dist = torch.index_select(edge, dim=-1, index=ind.view(-1))
        dist = dist.view(dist.size(0), ind.size(0), ind.size(1), ind.size(2))
        aff = torch.squeeze(1 - F.max_pool2d(dist, (dist.size(2), 1)), dim=2)
        aff_list.append(aff)
    return torch.cat(aff_list, dim=1)


def _affinity_sparse2dense(affinity_sparse: Tensor, ind_from: np.ndarray, ind_to: np.ndarray,
                           n_vertices: int) -> Tensor:
    ind_from_t = torch.from_numpy(ind_from)
    ind_to_t = torch.from_numpy(ind_to)
    affinity_sparse = affinity_sparse.view(-1).cpu()
    ind_from_t = ind_from_t.repeat(ind_to_t.size(0)).view(-1)
    ind_to_t = ind_to_t.view(-1)
    indices = torch.stack([ind_from_t, ind_to_t])
    indices_tp = torch.stack([ind_to_t, ind_from_t])
    indices_id = torch.stack([torch.arange(0, n_vertices).long(), torch.arange(0, n_vertices).long()])
    values = torch.cat([affinity_sparse, torch.ones([n_vertices], dtype=affinity_sparse.dtype), affinity_sparse])
    return torch.sparse_coo_tensor(torch.cat([indices, indices_id, indices_tp], dim=1), values,
                                   (n_vertices, n_vertices), check_invariants=False).to_dense()


def _to_transition_matrix(affinity_dense: Tensor, beta: float, times: int) -> Tensor:
    scaled_affinity = torch.pow(affinity_dense, beta)
    trans_mat = scaled_affinity / torch.sum(scaled_affinity, dim=0, keepdim=True)
    for _ in range(times):
        trans_mat = torch.matmul(trans_mat, trans_mat)
    return trans_mat


def release_propagate_to_edge(x: Tensor, edge: Tensor, radius: int = 5, beta: float = 10,
                              exp_times: int = 8) -> Tensor:
    """``propagate_to_edge``: x (K×h×w), edge (1×h×w) -> (K×1×h×w), the dense release computation."""
    height, width = x.shape[-2:]
    hor_padded = width + radius * 2
    ver_padded = height + radius
    path_index = ReleasePathIndex(radius=radius, default_size=(ver_padded, hor_padded))
    edge_padded = F.pad(edge, (radius, radius, 0, radius), mode="constant", value=1.0)
    sparse_aff = release_edge_to_affinity(torch.unsqueeze(edge_padded, 0), path_index.path_indices)
    dense_aff = _affinity_sparse2dense(sparse_aff, path_index.src_indices, path_index.dst_indices,
                                       ver_padded * hor_padded).to(x.device)
    dense_aff = dense_aff.view(ver_padded, hor_padded, ver_padded, hor_padded)
    dense_aff = dense_aff[:-radius, radius:-radius, :-radius, radius:-radius]
    dense_aff = dense_aff.reshape(height * width, height * width)
    trans_mat = _to_transition_matrix(dense_aff, beta=beta, times=exp_times)
    x = x.view(-1, height, width) * (1 - edge)
    rw = torch.matmul(x.view(-1, height * width), trans_mat)
    return rw.view(rw.size(0), 1, height, width)


def release_affinity_labels(segm_map: np.ndarray, indices_from: np.ndarray,
                            indices_to: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """``GetAffinityLabelFromIndices.__call__`` (valid = both labels < 21)."""
    segm_map_flat = np.reshape(segm_map, -1)
    segm_label_from = np.expand_dims(segm_map_flat[indices_from], axis=0)
    segm_label_to = segm_map_flat[indices_to]
    valid_label = np.logical_and(np.less(segm_label_from, 21), np.less(segm_label_to, 21))
    equal_label = np.equal(segm_label_from, segm_label_to)
    pos_affinity_label = np.logical_and(equal_label, valid_label)
    bg_pos = np.logical_and(pos_affinity_label, np.equal(segm_label_from, 0)).astype(np.float32)
    fg_pos = np.logical_and(pos_affinity_label, np.greater(segm_label_from, 0)).astype(np.float32)
    neg = np.logical_and(np.logical_not(equal_label), valid_label).astype(np.float32)
    return torch.from_numpy(bg_pos), torch.from_numpy(fg_pos), torch.from_numpy(neg)


def release_affinity_loss(edge_logits: Tensor, path_index: ReleasePathIndex, bg_pos_label: Tensor,
                          fg_pos_label: Tensor, neg_label: Tensor) -> Tensor:
    """``AffinityDisplacementLoss.forward`` (affinity part) + the loss lines of ``train_irn.py`` (semantic half)."""
    aff = release_edge_to_affinity(torch.sigmoid(edge_logits), path_index.path_indices)
    pos_aff_loss = (-1) * torch.log(aff + 1e-5)
    neg_aff_loss = (-1) * torch.log(1.0 + 1e-5 - aff)
    bg_pos_aff_loss = torch.sum(bg_pos_label * pos_aff_loss) / (torch.sum(bg_pos_label) + 1e-5)
    fg_pos_aff_loss = torch.sum(fg_pos_label * pos_aff_loss) / (torch.sum(fg_pos_label) + 1e-5)
    pos_aff_loss = bg_pos_aff_loss / 2 + fg_pos_aff_loss / 2
    neg_aff_loss = torch.sum(neg_label * neg_aff_loss) / (torch.sum(neg_label) + 1e-5)
    return (pos_aff_loss + neg_aff_loss) / 2


def release_sem_seg_labels(cams: Tensor, keys: np.ndarray, edge: Tensor, orig_img_size: tuple[int, int],
                           sem_seg_bg_thres: float = 0.25, beta: float = 10, exp_times: int = 8) -> np.ndarray:
    """``make_sem_seg_labels._work`` for one image: cams (K×h×w, present classes), keys (0 + class ids + 1)."""
    rw = release_propagate_to_edge(cams, edge, beta=beta, exp_times=exp_times, radius=5)
    rw_up = F.interpolate(rw, scale_factor=4, mode="bilinear", align_corners=False)[
        ..., 0, :orig_img_size[0], :orig_img_size[1]]
    rw_up = rw_up / torch.max(rw_up)
    rw_up_bg = F.pad(rw_up, (0, 0, 0, 0, 1, 0), value=sem_seg_bg_thres)
    rw_pred = torch.argmax(rw_up_bg, dim=0).cpu().numpy()
    return keys[rw_pred]


def release_crf_inference_label(img: np.ndarray, labels: np.ndarray, t: int = 10, n_labels: int = 21,
                                gt_prob: float = 0.7) -> np.ndarray:
    """``misc/imutils.py`` ``crf_inference_label`` (pydensecrf)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    h, w = img.shape[:2]
    d = dcrf.DenseCRF2D(w, h, n_labels)
    unary = unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(np.copy(img)), compat=10)
    q = d.inference(t)
    return np.argmax(np.array(q).reshape((n_labels, h, w)), axis=0)


def release_ir_label(img: np.ndarray, cams: np.ndarray, keys: np.ndarray, conf_fg_thres: float = 0.30,
                     conf_bg_thres: float = 0.05) -> np.ndarray:
    """``cam_to_ir_label._work`` for one image: img H×W×3 uint8, cams K×H×W (``high_res``), keys."""
    fg_conf_cam = np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=conf_fg_thres)
    fg_conf_cam = np.argmax(fg_conf_cam, axis=0)
    pred = release_crf_inference_label(img, fg_conf_cam, n_labels=keys.shape[0])
    fg_conf = keys[pred]
    bg_conf_cam = np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=conf_bg_thres)
    bg_conf_cam = np.argmax(bg_conf_cam, axis=0)
    pred = release_crf_inference_label(img, bg_conf_cam, n_labels=keys.shape[0])
    bg_conf = keys[pred]
    conf = fg_conf.copy()
    conf[fg_conf == 0] = 255
    conf[bg_conf + fg_conf == 0] = 0
    return conf


def release_pil_rescale_nearest(img: np.ndarray, scale: float) -> np.ndarray:
    """``imutils.pil_rescale(img, scale, order=0)`` (PIL ``Image.NEAREST``)."""
    from PIL import Image

    height, width = img.shape[:2]
    target = (int(np.round(height * scale)), int(np.round(width * scale)))
    return np.asarray(Image.fromarray(img).resize(target[::-1], Image.NEAREST))


def release_make_cam(model, img_list: list[Tensor], label: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """``make_cam._work`` for one image: ``img_list`` holds one (2, 3, h, w) image+flip pair per scale.

    ``model`` stands for the release's ``CAM`` network forward: raw class maps of the pair, to which the
    release applies ReLU and the flip sum (``net/resnet50_cam.py`` lines 66-68).
    """

    def cam_forward(x: Tensor) -> Tensor:
        x = F.relu(model(x))
        return x[0] + x[1].flip(-1)

    strided_size = ((size[0] - 1) // 4 + 1, (size[1] - 1) // 4 + 1)
    strided_up_size = (((size[0] - 1) // 16 + 1) * 16, ((size[1] - 1) // 16 + 1) * 16)
    outputs = [cam_forward(img) for img in img_list]
    strided_cam = torch.sum(torch.stack([F.interpolate(torch.unsqueeze(o, 0), strided_size, mode="bilinear",
                                                       align_corners=False)[0] for o in outputs]), 0)
    highres_cam = [F.interpolate(torch.unsqueeze(o, 1), strided_up_size, mode="bilinear", align_corners=False)
                   for o in outputs]
    highres_cam = torch.sum(torch.stack(highres_cam, 0), 0)[:, 0, :size[0], :size[1]]
    valid_cat = torch.nonzero(label)[:, 0]
    strided_cam = strided_cam[valid_cat]
    strided_cam /= F.adaptive_max_pool2d(strided_cam, (1, 1)) + 1e-5
    highres_cam = highres_cam[valid_cat]
    highres_cam /= F.adaptive_max_pool2d(highres_cam, (1, 1)) + 1e-5
    return strided_cam, highres_cam

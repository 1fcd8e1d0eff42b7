"""Split-file parsers on small trees written in each dataset's exact on-disk format."""

from __future__ import annotations

from pathlib import Path

import pytest

from vididi.data.splits import (
    THUMOS14_CLASSES,
    Segment,
    list_dataset,
    list_folder,
    list_hmdb51,
    list_kinetics,
    list_thumos14,
    list_ucf101_layout,
)
from vididi.utils import VididiError


def touch(root: Path, *rel_paths: str) -> None:
    for rel in rel_paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not a real video")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def by_id(listing):
    return {v.video_id: v for v in listing.videos}


# ---------------------------------------------------------------------------------------------------------
# UCF101


def ucf_tree(root: Path, list_dir: str = "ucfTrainTestlist") -> None:
    touch(
        root,
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g25_c07.avi",  # on disk, in no list
        "Archery/v_Archery_g08_c01.mp4",  # re-encoded copy: lists say .avi
        "Archery/v_Archery_g01_c02.avi",
        "HandstandPushups/v_HandStandPushups_g01_c01.avi",  # the real folder/file capitalisation quirk
    )
    lists = root / list_dir
    # the real files use CRLF line ends; classInd is 1-based
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 Archery\r\n3 HandstandPushups\r\n")
    write(
        lists / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "Archery/v_Archery_g08_c01.avi 2\r\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 3\r\n",  # not on disk
    )
    write(
        lists / "testlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
        "Archery/v_Archery_g01_c02.avi\r\n"
        "HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n",
    )
    # split 2 swaps the roles of two videos; no label column (it is optional)
    write(lists / "trainlist02.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
    write(lists / "testlist02.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\n")


def test_ucf101_classes_labels_splits_and_missing(tmp_path):
    ucf_tree(tmp_path)
    listing = list_ucf101_layout(tmp_path)
    assert listing.classes == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    videos = by_id(listing)
    expected = {
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01": ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0,
                                                    {"1": "train", "2": "test"}),
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01": ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0,
                                                    {"1": "test", "2": "train"}),
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g25_c07": ("ApplyEyeMakeup/v_ApplyEyeMakeup_g25_c07.avi", 0, {}),
        "Archery/v_Archery_g08_c01": ("Archery/v_Archery_g08_c01.mp4", 1, {"1": "train"}),
        "Archery/v_Archery_g01_c02": ("Archery/v_Archery_g01_c02.avi", 1, {"1": "test"}),
        "HandstandPushups/v_HandStandPushups_g01_c01": ("HandstandPushups/v_HandStandPushups_g01_c01.avi", 2,
                                                        {"1": "test"}),
    }  # fmt: skip
    assert set(videos) == set(expected)
    for vid, (path, label, splits) in expected.items():
        assert (videos[vid].path, videos[vid].label, videos[vid].splits) == (path, label, splits), vid
        assert not videos[vid].untrimmed
    assert [v.video_id for v in listing.videos] == sorted(expected)
    assert [path for path, _ in listing.missing] == ["HandstandPushups/v_HandStandPushups_g08_c01.avi"]
    assert "trainlist01.txt:3" in listing.missing[0][1]
    assert listing.segments == []


def test_ucf101_split_files_in_root_and_dispatcher(tmp_path):
    ucf_tree(tmp_path, list_dir=".")
    listing, missing = list_dataset("ucf101", tmp_path)
    assert by_id(listing)["Archery/v_Archery_g08_c01"].splits == {"1": "train"}
    assert missing == listing.missing and len(missing) == 1
    synthetic, _ = list_dataset("synthetic", tmp_path)  # the embedded dataset uses the same layout
    assert synthetic == listing


def test_ucf101_label_column_must_match_folder(tmp_path):
    ucf_tree(tmp_path)
    write(tmp_path / "ucfTrainTestlist/trainlist01.txt", "Archery/v_Archery_g08_c01.avi 1\n")
    with pytest.raises(VididiError, match=r"trainlist01.txt:1.*Archery"):
        list_ucf101_layout(tmp_path)


def test_ucf101_video_in_train_and_test_of_one_split_is_refused(tmp_path):
    ucf_tree(tmp_path)
    write(tmp_path / "ucfTrainTestlist/testlist02.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
    with pytest.raises(VididiError, match="both the train and test list of split 2"):
        list_ucf101_layout(tmp_path)


def test_ucf101_folder_outside_class_index_is_refused(tmp_path):
    ucf_tree(tmp_path)
    touch(tmp_path, "YoYo/v_YoYo_g01_c01.avi")
    with pytest.raises(VididiError, match="'YoYo'"):
        list_ucf101_layout(tmp_path)


def test_ucf101_layout_reads_embedded_untrimmed_videos(tmp_path):
    ucf_tree(tmp_path)
    touch(
        tmp_path,
        "untrimmed/validation/video_validation_0000001.mp4",
        "untrimmed/validation/video_validation_0000002.mp4",  # background only: kept (annotated_only=False)
        "untrimmed/test/video_test_0000001.mp4",
    )
    write(tmp_path / "untrimmed/annotation_val/Archery_val.txt", "video_validation_0000001 1.5 4.25\n")
    write(
        tmp_path / "untrimmed/annotation_test/ApplyEyeMakeup_test.txt",
        "video_test_0000001 0.0 2.0\nvideo_test_0000001 10 12.5\nvideo_test_0000009 3 4\n",
    )
    listing = list_ucf101_layout(tmp_path)
    videos = by_id(listing)
    v1 = videos["untrimmed/validation/video_validation_0000001"]
    assert (v1.path, v1.label, v1.splits, v1.untrimmed) == (
        "untrimmed/validation/video_validation_0000001.mp4", -1, {"1": "train"}, True)
    assert videos["untrimmed/validation/video_validation_0000002"].splits == {"1": "train"}
    assert videos["untrimmed/test/video_test_0000001"].splits == {"1": "test"}
    # labels index the UCF class list: ApplyEyeMakeup = 0, Archery = 1
    assert listing.segments == [
        Segment("untrimmed/test/video_test_0000001", 0.0, 2.0, 0),
        Segment("untrimmed/test/video_test_0000001", 10.0, 12.5, 0),
        Segment("untrimmed/validation/video_validation_0000001", 1.5, 4.25, 1),
    ]
    assert ("video_test_0000009", "annotated in ApplyEyeMakeup_test.txt but no video file under "
            f"{tmp_path / 'untrimmed'}") in listing.missing
    # class folders never include the untrimmed tree
    assert listing.classes == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]


# ---------------------------------------------------------------------------------------------------------
# HMDB51


def test_hmdb51_codes_and_missing(tmp_path):
    touch(
        tmp_path,
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi",
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_2.avi",
        "cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi",  # real names have odd characters
    )
    splits = tmp_path / "testTrainMulti_7030_splits"
    # real lines end with a space
    write(splits / "brush_hair_test_split1.txt",
          "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \nApril_09_brush_hair_u_nm_np1_ba_goo_1.avi 2 \n"
          "April_09_brush_hair_u_nm_np1_ba_goo_2.avi 0 \n")  # fmt: skip
    write(splits / "brush_hair_test_split2.txt",
          "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 2 \nApril_09_brush_hair_u_nm_np1_ba_goo_1.avi 0 \n"
          "April_09_brush_hair_u_nm_np1_ba_goo_2.avi 1 \n")  # fmt: skip
    write(splits / "cartwheel_test_split1.txt",
          "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi 1 \nGymnastics_cartwheel_f_cm_np1_ri_bad_3.avi 2 \n")
    listing = list_hmdb51(tmp_path)  # default splits_dir: testTrainMulti_7030_splits
    assert listing.classes == ["brush_hair", "cartwheel"]
    videos = by_id(listing)
    assert videos["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0"].splits == {"1": "train", "2": "test"}
    assert videos["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1"].splits == {"1": "test"}
    assert videos["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_2"].splits == {"2": "train"}
    cart = videos["cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0"]
    assert (cart.label, cart.splits, cart.path) == (
        1, {"1": "train"}, "cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi")
    assert [p for p, _ in listing.missing] == ["cartwheel/Gymnastics_cartwheel_f_cm_np1_ri_bad_3.avi"]
    assert list_hmdb51(tmp_path, splits_dir=splits) == listing


def test_hmdb51_bad_code_names_file_and_line(tmp_path):
    touch(tmp_path, "wave/a.avi")
    write(tmp_path / "wave_test_split1.txt", "a.avi 1\na.avi 3\n")
    with pytest.raises(VididiError, match=r"wave_test_split1.txt:2"):
        list_hmdb51(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Kinetics-400

KINETICS_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


def kinetics_tree(root: Path) -> None:
    write(
        root / "annotations/train.csv",
        KINETICS_HEADER
        + "abseiling,--07WQ2iBlw,1,11,train,0\n"
        + "abseiling,-3B32lodo2M,59,69,train,0\n"
        + "abseiling,0347ZoDXyP0,28,38,train,0\n"
        + '"passing American football (in game)",-0cpYgRLbSA,3,13,train,0\n'
        + "zumba,zzzzzzzzzz1,0,10,train,0\n",
    )
    write(
        root / "annotations/val.csv",
        KINETICS_HEADER + "abseiling,3caPS4FHFF8,36,46,val,0\nzumba,ab_cdEFgh-2,120,130,val,0\n",
    )
    touch(
        root,
        "train/abseiling/--07WQ2iBlw_000001_000011.mp4",  # class folders
        "train/abseiling/0347ZoDXyP0_000028_000038.mp4",
        "train/passing American football (in game)/-0cpYgRLbSA_000003_000013.mp4",
        "train/zumba/zzzzzzzzzz1_000000_000010.mp4",
        "val/3caPS4FHFF8_000036_000046.mp4",  # flat
        "val/ab_cdEFgh-2_000120_000130.mkv",
        "replacement/replacement_for_corrupted_k400/0347ZoDXyP0_000028_000038.mp4",
    )


def test_kinetics_labels_splits_missing_and_replacements(tmp_path):
    kinetics_tree(tmp_path)
    listing = list_kinetics(tmp_path)  # default CSVs: annotations/{train,val}.csv
    assert listing.classes == ["abseiling", "passing American football (in game)", "zumba"]
    videos = by_id(listing)
    assert videos["train/abseiling/--07WQ2iBlw_000001_000011"].splits == {"1": "train"}
    assert videos["train/abseiling/--07WQ2iBlw_000001_000011"].label == 0
    assert videos["train/passing American football (in game)/-0cpYgRLbSA_000003_000013"].label == 1
    assert videos["val/3caPS4FHFF8_000036_000046"].splits == {"1": "test"}
    assert videos["val/ab_cdEFgh-2_000120_000130"].path == "val/ab_cdEFgh-2_000120_000130.mkv"
    # the replacement copy wins over the corrupted original
    replaced = videos["replacement/replacement_for_corrupted_k400/0347ZoDXyP0_000028_000038"]
    assert (replaced.label, replaced.splits) == (0, {"1": "train"})
    assert "train/abseiling/0347ZoDXyP0_000028_000038" not in videos
    assert len(listing.videos) == 6
    assert [p for p, _ in listing.missing] == ["train/-3B32lodo2M_000059_000069.mp4"]
    assert "train.csv" in listing.missing[0][1] and "abseiling" in listing.missing[0][1]


def test_kinetics_class_and_per_class_subsets(tmp_path):
    kinetics_tree(tmp_path)
    first = list_kinetics(tmp_path, classes=1, videos_per_class=1)
    assert first.classes == ["abseiling"]
    # rows are taken in youtube_id order: '--07WQ2iBlw' < '-3B32lodo2M' < '0347ZoDXyP0' (train), one per subset
    assert [v.video_id for v in first.videos] == ["train/abseiling/--07WQ2iBlw_000001_000011",
                                                  "val/3caPS4FHFF8_000036_000046"]
    assert first.missing == []  # the missing row comes after the quota is filled
    named = list_kinetics(tmp_path, classes=["zumba", "abseiling"], videos_per_class=2)
    assert named.classes == ["zumba", "abseiling"]
    labels = {v.video_id: v.label for v in named.videos}
    assert labels["train/zumba/zzzzzzzzzz1_000000_000010"] == 0
    assert labels["train/abseiling/--07WQ2iBlw_000001_000011"] == 1
    # abseiling train: '--07' found, '-3B3' missing (reported), '0347' found via replacement -> quota 2 met
    assert [p for p, _ in named.missing] == ["train/-3B32lodo2M_000059_000069.mp4"]
    assert sum(1 for v in named.videos if v.label == 1 and v.splits == {"1": "train"}) == 2
    with pytest.raises(VididiError, match="juggling"):
        list_kinetics(tmp_path, classes=["juggling"])


def test_kinetics_explicit_csvs_and_refused_test_subset(tmp_path):
    kinetics_tree(tmp_path)
    listing = list_kinetics(tmp_path, {"train": "annotations/train.csv"}, replacement_dir=None)
    assert {v.splits["1"] for v in listing.videos} == {"train"}
    assert "train/abseiling/0347ZoDXyP0_000028_000038" in by_id(listing)
    write(tmp_path / "annotations/test.csv", "youtube_id,time_start,time_end,split\nabc,0,10,test\n")
    with pytest.raises(VididiError, match="'test'"):
        list_kinetics(tmp_path, {"test": "annotations/test.csv"})


# ---------------------------------------------------------------------------------------------------------
# THUMOS14


def thumos_tree(root: Path) -> None:
    touch(
        root,
        "validation/video_validation_0000051.mp4",
        "validation/video_validation_0000052.mp4",  # no annotation
        "TH14_test_set_mp4/video_test_0000004.mp4",
        "TH14_test_set_mp4/video_test_0001292.mp4",  # only an Ambiguous segment
    )
    val = root / "TH14_Temporal_annotations_validation/annotation"
    write(val / "BaseballPitch_val.txt", "video_validation_0000051  67.5  75.9\nvideo_validation_0000051 80 85.1\n")
    write(val / "Ambiguous_val.txt", "video_validation_0000052 1.0 2.0\n")
    test = root / "TH14_Temporal_Annotations_Test/annotations/annotation"
    write(test / "CliffDiving_test.txt", "video_test_0000004 12.3 15.0\nvideo_test_0000999 1 2\n")
    write(test / "Diving_test.txt", "video_test_0000004 12.3 15.0\n")
    write(test / "Ambiguous_test.txt", "video_test_0001292 5 6\n")


def test_thumos14_videos_segments_and_missing(tmp_path):
    thumos_tree(tmp_path)
    listing = list_thumos14(tmp_path)
    assert listing.classes == list(THUMOS14_CLASSES) and len(listing.classes) == 20
    assert [(v.video_id, v.label, v.splits, v.untrimmed) for v in listing.videos] == [
        ("TH14_test_set_mp4/video_test_0000004", -1, {"1": "test"}, True),
        ("validation/video_validation_0000051", -1, {"1": "train"}, True),
    ]
    # BaseballPitch = 0, CliffDiving = 4, Diving = 7 in the THUMOS14 class order
    assert listing.segments == [
        Segment("TH14_test_set_mp4/video_test_0000004", 12.3, 15.0, 4),
        Segment("TH14_test_set_mp4/video_test_0000004", 12.3, 15.0, 7),
        Segment("validation/video_validation_0000051", 67.5, 75.9, 0),
        Segment("validation/video_validation_0000051", 80.0, 85.1, 0),
    ]
    assert [p for p, _ in listing.missing] == ["video_test_0000999"]


def test_thumos14_all_videos_and_class_order(tmp_path):
    thumos_tree(tmp_path)
    ucf_like = ["Archery", "BaseballPitch", "CliffDiving", "Diving"]
    listing = list_thumos14(tmp_path, class_order=ucf_like, annotated_only=False)
    assert listing.classes == ucf_like
    assert len(listing.videos) == 4
    assert {s.label for s in listing.segments} == {1, 2, 3}
    with pytest.raises(VididiError, match="BaseballPitch"):
        list_thumos14(tmp_path, class_order=["CliffDiving", "Diving"])


def test_thumos14_segment_ending_before_start_is_refused(tmp_path):
    touch(tmp_path, "video_validation_0000001.mp4")
    write(tmp_path / "annotation/HighJump_val.txt", "video_validation_0000001 9.0 3.0\n")
    with pytest.raises(VididiError, match=r"HighJump_val.txt:1"):
        list_thumos14(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# user folders and the dispatcher


def test_folder_seeded_split_is_per_class_70_30_and_deterministic(tmp_path):
    touch(tmp_path, *[f"run/clip{i:02d}.mp4" for i in range(10)], *[f"jump/sub/clip{i}.webm" for i in range(3)])
    touch(tmp_path, "jump/notes.txt")  # not a video
    listing = list_folder(tmp_path)
    assert listing.classes == ["jump", "run"]
    per_class = {c: {"train": 0, "test": 0} for c in (0, 1)}
    for video in listing.videos:
        per_class[video.label][video.splits["1"]] += 1
    assert per_class == {0: {"train": 2, "test": 1}, 1: {"train": 7, "test": 3}}  # round(0.7*3)=2, round(7.0)=7
    assert "jump/sub/clip0" in by_id(listing)
    assert list_folder(tmp_path) == listing
    other_seeds = [list_folder(tmp_path, seed=s) for s in range(1, 6)]
    assert any(o.videos != listing.videos for o in other_seeds)
    # round(0.9 * 3) = 3 would leave no test video: a class of 3 keeps one on each side
    skewed = list_folder(tmp_path, train_fraction=0.9)
    assert sorted(v.splits["1"] for v in skewed.videos if v.label == 0) == ["test", "train", "train"]
    assert sum(v.splits["1"] == "train" for v in skewed.videos if v.label == 1) == 9


def test_folder_with_ucf_style_split_files(tmp_path):
    touch(tmp_path, "a/x.mp4", "a/y.mp4", "b c/z 1.mp4")  # user folders may have spaces in names
    write(tmp_path / "lists/trainlist01.txt", "a/x.mp4 1\nb c/z 1.mp4 2\n")
    write(tmp_path / "lists/testlist01.txt", "a/y.mp4\na/gone.mp4\n")
    listing = list_folder(tmp_path, split_files="lists")
    assert listing.classes == ["a", "b c"]
    assert {v.video_id: (v.label, v.splits) for v in listing.videos} == {
        "a/x": (0, {"1": "train"}), "a/y": (0, {"1": "test"}), "b c/z 1": (1, {"1": "train"})}
    assert [p for p, _ in listing.missing] == ["a/gone.mp4"]
    same = list_folder(tmp_path, split_files=[tmp_path / "lists/trainlist01.txt", "lists/testlist01.txt"])
    assert same == listing


def test_folder_honours_its_class_index(tmp_path):
    # a user's UCF-style folder whose labels are not the alphabetical order of the class names
    touch(tmp_path, "UniformLinear/a.mp4", "UniformLinear/b.mp4", "Bouncing/c.mp4", "Bouncing/d.mp4", "Zig Zag/e.mp4")
    write(tmp_path / "lists/classInd.txt", "1 UniformLinear\n2 Zig Zag\n3 Bouncing\n")
    write(tmp_path / "lists/trainlist01.txt", "UniformLinear/a.mp4 1\nBouncing/c.mp4 3\nZig Zag/e.mp4 2\n")
    write(tmp_path / "lists/testlist01.txt", "UniformLinear/b.mp4\nBouncing/d.mp4\n")
    listing = list_folder(tmp_path, split_files="lists")
    assert listing.classes == ["UniformLinear", "Zig Zag", "Bouncing"]  # labels and report order follow the index
    assert {v.video_id: v.label for v in listing.videos} == {
        "UniformLinear/a": 0, "UniformLinear/b": 0, "Zig Zag/e": 1, "Bouncing/c": 2, "Bouncing/d": 2}
    same = list_folder(tmp_path, split_files=["lists/trainlist01.txt", "lists/testlist01.txt"])
    assert same == listing

    # without split files, a classInd.txt in the root gives the labels of the random split
    write(tmp_path / "classInd.txt", "1 Zig Zag\n2 UniformLinear\n3 Bouncing\n")
    random_split = list_folder(tmp_path)
    assert random_split.classes == ["Zig Zag", "UniformLinear", "Bouncing"]
    assert {v.video_id: v.label for v in random_split.videos}["UniformLinear/a"] == 1

    # real inconsistencies name the file and line
    write(tmp_path / "lists/trainlist01.txt", "UniformLinear/a.mp4 1\nBouncing/c.mp4 2\n")
    with pytest.raises(VididiError, match=r"trainlist01.txt:2: label 2 is 'Zig Zag' in .*classInd.txt, but the video is in folder 'Bouncing'"):
        list_folder(tmp_path, split_files="lists")
    write(tmp_path / "lists/trainlist01.txt", "UniformLinear/a.mp4 7\n")
    with pytest.raises(VididiError, match=r"trainlist01.txt:1: label 7 is not a class of .*classInd.txt \(1..3\)"):
        list_folder(tmp_path, split_files="lists")
    write(tmp_path / "lists/trainlist01.txt", "UniformLinear/a.mp4 1\n")
    touch(tmp_path, "Spinning/f.mp4")
    with pytest.raises(VididiError, match=r"video folder 'Spinning' under .* is not a class of .*lists/classInd.txt"):
        list_folder(tmp_path, split_files="lists")
    write(tmp_path / "lists/classInd.txt", "1 UniformLinear\n2 Zig Zag\n3 Bouncing\n4 Spinning\n5 Bouncing\n")
    with pytest.raises(VididiError, match=r"classInd.txt:5: class 'Bouncing' is already listed on line 3"):
        list_folder(tmp_path, split_files="lists")


def test_dispatcher_rejects_unknown_source_and_option(tmp_path):
    touch(tmp_path, "a/x.mp4")
    with pytest.raises(VididiError, match="unknown dataset source 'ucf202'"):
        list_dataset("ucf202", tmp_path)
    with pytest.raises(VididiError, match="videos_per_class"):
        list_dataset("folder", tmp_path, videos_per_class=3)
    with pytest.raises(VididiError, match="not a directory"):
        list_dataset("hmdb51", tmp_path / "nope")

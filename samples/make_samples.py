"""Re-create the sample clips from the original assets (see README.md for their sources)."""

import sys
from pathlib import Path

from facefab.media import read_audio, read_frames, write_audio, write_video

src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
here = Path(__file__).parent
d6 = str(src / "videos" / "drive_d6.mp4")
write_video(str(here / "talking_d6_4s.mp4"), read_frames(d6, fps=25, start=0, end=4), 25,
            audio=read_audio(d6, start=0, end=4), audio_rate=16000, crf=26)
write_video(str(here / "halfbody_sun_3s.mp4"),
            read_frames(str(src / "videos" / "talk_sun.mp4"), fps=25, start=2, end=5, size=(384, 512)), 25, crf=26)
write_audio(str(here / "speech_hallo1_4s.wav"), read_audio(str(src / "audio" / "speech_hallo1.wav"), start=0, end=4), 16000)

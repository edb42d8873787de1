//! Why a transcode failed, in a form the API can map to an HTTP status and
//! show to a commune officer (`message_vi`).

use std::time::Duration;

/// Everything that can go wrong while turning an upload into a programme.
///
/// Variants up to `Silent` are caused by the uploaded file (the API answers
/// 4xx); `Io` and `Encoder` are server-side failures (5xx).
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// No supported container/codec was recognised: an image, text, random
    /// bytes, a video without audio, or an audio codec we do not decode.
    #[error("not a supported audio file: {0}")]
    NotAudio(String),
    /// The file is empty, or contains a valid container with no audio (or
    /// less than the 0.4 s needed to measure loudness).
    #[error("the file contains no audio")]
    Empty,
    /// The file looks like audio but cannot be decoded: a header that lies
    /// about the length, a truncated file, undecodable packets.
    #[error("corrupt audio file: {0}")]
    Corrupt(String),
    /// The audio is longer than `TranscodeOptions::max_duration`.
    #[error("audio is longer than the limit of {} s", limit.as_secs())]
    TooLong {
        /// The configured limit that was exceeded.
        limit: Duration,
    },
    /// The audio decodes but contains nothing audible (integrated loudness
    /// is -inf LUFS after EBU R128 gating).
    #[error("the audio is silent (no audible content)")]
    Silent,
    /// Reading the input or writing the output failed (disk full, permissions...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// libopus, the resampler or the loudness meter refused to work.
    #[error("encoder error: {0}")]
    Encoder(String),
}

impl TranscodeError {
    /// True when the uploader can fix the problem (bad file), false for
    /// server-side failures. The API maps this to 4xx vs 5xx.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, TranscodeError::Io(_) | TranscodeError::Encoder(_))
    }

    /// A stable machine-readable code for the API's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            TranscodeError::NotAudio(_) => "not_audio",
            TranscodeError::Empty => "empty_audio",
            TranscodeError::Corrupt(_) => "corrupt_audio",
            TranscodeError::TooLong { .. } => "audio_too_long",
            TranscodeError::Silent => "silent_audio",
            TranscodeError::Io(_) => "io_error",
            TranscodeError::Encoder(_) => "encoder_error",
        }
    }

    /// Explanation for the commune officer, in Vietnamese.
    pub fn message_vi(&self) -> String {
        match self {
            TranscodeError::NotAudio(_) => "Tệp không phải là âm thanh hoặc định dạng không được \
                 hỗ trợ (hỗ trợ MP3, WAV, FLAC, OGG, M4A)."
                .to_owned(),
            TranscodeError::Empty => {
                "Tệp trống hoặc không chứa âm thanh (cần ít nhất nửa giây âm thanh).".to_owned()
            }
            TranscodeError::Corrupt(_) => "Tệp âm thanh bị hỏng hoặc không đầy đủ (có thể tải \
                 lên bị gián đoạn). Vui lòng xuất lại tệp và tải lên lần nữa."
                .to_owned(),
            TranscodeError::TooLong { limit } => {
                let minutes = limit.as_secs().div_ceil(60);
                let (h, m) = (minutes / 60, minutes % 60);
                let limit_vi = match (h, m) {
                    (0, m) => format!("{m} phút"),
                    (h, 0) => format!("{h} giờ"),
                    (h, m) => format!("{h} giờ {m} phút"),
                };
                format!("Âm thanh quá dài: thời lượng tối đa cho phép là {limit_vi}.")
            }
            TranscodeError::Silent => {
                "Tệp không có âm thanh nghe được (chỉ toàn im lặng).".to_owned()
            }
            TranscodeError::Io(_) => "Lỗi đọc/ghi tệp trên máy chủ (có thể ổ đĩa đã đầy). \
                 Vui lòng thử lại sau hoặc báo quản trị viên."
                .to_owned(),
            TranscodeError::Encoder(_) => "Lỗi khi chuyển mã âm thanh trên máy chủ. Vui lòng \
                 thử lại hoặc báo quản trị viên."
                .to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_vietnamese_and_distinct() {
        let errors = [
            TranscodeError::NotAudio("x".into()),
            TranscodeError::Empty,
            TranscodeError::Corrupt("x".into()),
            TranscodeError::TooLong {
                limit: Duration::from_secs(4 * 3600),
            },
            TranscodeError::Silent,
            TranscodeError::Io(std::io::Error::other("x")),
            TranscodeError::Encoder("x".into()),
        ];
        let messages: Vec<String> = errors.iter().map(|e| e.message_vi()).collect();
        for (i, m) in messages.iter().enumerate() {
            assert!(
                !m.is_ascii(),
                "message {i} has no Vietnamese diacritics: {m}"
            );
            assert!(messages.iter().filter(|o| *o == m).count() == 1);
        }
        assert!(messages[0].contains("MP3, WAV, FLAC, OGG, M4A"));
        assert_eq!(
            errors[3].message_vi(),
            "Âm thanh quá dài: thời lượng tối đa cho phép là 4 giờ."
        );
        let limit = Duration::from_secs(90 * 60);
        assert!(
            TranscodeError::TooLong { limit }
                .message_vi()
                .contains("1 giờ 30 phút")
        );
        assert!(errors[0].is_user_error() && !errors[5].is_user_error());
    }
}
